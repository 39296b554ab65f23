"""twistd and endpoint plugins of janustls: instances only, everything is defined in the package."""

from janustls.plugin import JanusEndpointParser, JanusServiceMaker

janustls_service = JanusServiceMaker()
janustls_endpoint = JanusEndpointParser()

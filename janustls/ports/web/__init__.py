"""The web port: HTTP/1.1 (and HTTP/2) on twisted.web, dispatched by a Janus-style rule table."""

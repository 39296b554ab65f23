"""The web port: HTTP/1.1 on twisted.web, dispatched by a Janus-style rule table."""

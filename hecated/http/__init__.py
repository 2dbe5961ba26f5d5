"""The edge: the Werkzeug app, the waitress serving layer and the OpenAPI description."""

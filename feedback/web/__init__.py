"""The web: the REST API, the Gradio page and its handlers, the study pages, admin views and security headers."""

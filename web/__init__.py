"""The live service's web page and JSON API (FastAPI), fed by live.hub.LiveHub."""

"""Live service: bars as they close, one forecast per closed minute, outputs (files, Redis, the web hub)."""

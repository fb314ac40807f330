"""The BentoML scoring service (``service.service:ScoringService``) and what it is built from."""

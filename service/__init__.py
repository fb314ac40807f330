"""The BentoML scoring service (``service.service:FraudScorer``) and what it is built from."""

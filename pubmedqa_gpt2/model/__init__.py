"""The model: loading and building it as the params say, scoring decisions, generating."""

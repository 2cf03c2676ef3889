"""The DVC stages: one thin entry module each (`python -m stages.<stage>`), calling the library
`pubmedqa_gpt2`. Stage modules never import each other (tests/test_architecture.py)."""

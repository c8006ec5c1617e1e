"""Evaluating a model: held-out perplexity per corpus (`perplexity.py`), the model cards'
zero-shot table through lm-evaluation-harness (`harness.py`, published rows in
`model_cards.csv`), and sampling (`generate.py`)."""

"""The reference model of the follow-up rules (rules.py), the actions of an example
(actions.py) and hypothesis strategies drawing whole examples (strategies.py)."""

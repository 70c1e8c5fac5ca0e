"""secstate's domain: aggregates, events, rules, secrets and the command-side application.

Imports nothing from the rest of secstate; everything else may import this.
"""

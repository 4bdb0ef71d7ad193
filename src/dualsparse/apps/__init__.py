"""Applications built on the library: each is a task for the common Trainer plus its commands.

* :mod:`dualsparse.apps.lm`: word-level language modelling (PTB, WikiText-2).
"""

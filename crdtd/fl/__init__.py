"""Federated learning on crdtd: tasks, server optimisers, rounds and the training loop."""

"""Federated-learning pieces: the victim client and what it shares."""

from gradleak.fl.client import ClientSetup, SharedUpdate, client_update

__all__ = ["ClientSetup", "SharedUpdate", "client_update"]

"""Federated-learning pieces: the victim client and what it shares."""

from gradleak.fl.client import ClientSetup, client_update
from gradleak.update import SharedUpdate

__all__ = ["ClientSetup", "SharedUpdate", "client_update"]

"""The remote large model, over any OpenAI-compatible endpoint: the client (`client.py`: requests,
retries, the capability probe), the one transport every request passes (`transport.py`, the egress
choke point) and the parser of what servers answer (`formats.py`)."""
from .client import Messages, RemoteModel
from .formats import ChatReply, Continuation, RemoteCapabilities, TokenScores

__all__ = ["ChatReply", "Continuation", "Messages", "RemoteCapabilities", "RemoteModel", "TokenScores"]

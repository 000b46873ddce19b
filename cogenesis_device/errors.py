"""Exceptions raised by cogenesis-device. Each message names the problem."""


class CogenesisError(Exception):
    """Base class of every error raised by this library."""


class InvalidParameterError(CogenesisError, ValueError):
    """A parameter is out of range or not a number (n_ctx <= 0, top_p outside (0, 1], NaN temperature...)."""


class MissingFileError(CogenesisError, FileNotFoundError):
    """A model or state file does not exist."""


class ModelLoadError(CogenesisError):
    """A model file is not a valid GGUF model (bad magic, truncated, unsupported)."""


class UnknownModelError(CogenesisError, ValueError):
    """A model name is neither in the registry nor a path to a file."""


class ModelPackageMissingError(CogenesisError, ImportError):
    """A registry model's PyPI package is not installed."""


class MissingDependencyError(CogenesisError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


class ModelIntegrityError(CogenesisError):
    """A model assembled from chunk packages does not have the pinned size or SHA-256."""


class ContextOverflowError(CogenesisError, ValueError):
    """Tokens do not fit in the context window (for example a prompt longer than n_ctx)."""


class StateError(CogenesisError):
    """A KV state file is corrupt, truncated or was saved with another model."""


class NoChatTemplateError(CogenesisError):
    """The model carries no chat template that can be applied."""


class DecodeError(CogenesisError):
    """llama.cpp failed while evaluating tokens."""


class CogenesisIOError(CogenesisError, OSError):
    """A file could not be read or written."""


class CancelledError(CogenesisError):
    """An operation was stopped by cancel()."""


class PrivacyBlockedError(CogenesisError):
    """The egress guard refused to send a request: it contains private spans under policy 'block', or
    private text it cannot redact or check. A collaborative job fails with it under 'block' only; under
    the other policies it goes on with the local model alone (RemoteError kind 'privacy')."""


class RemoteError(CogenesisError):
    """The remote model could not be used: unreachable, timed out, or it answered with an error or garbage.

    kind is one of 'config', 'connection', 'timeout', 'status', 'malformed', 'missing_logprobs',
    'truncated', 'unsupported', 'refused' (the model declined to answer; the message quotes it),
    'cancelled' or 'privacy' (the egress guard refused the request under a policy other than 'block', so
    it was not sent); attempts counts the HTTP attempts made."""

    def __init__(self, message: str, *, kind: str, attempts: int = 0, status: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.attempts = attempts
        self.status = status


def without_traceback(error: BaseException) -> BaseException:
    """error without its traceback and chained exceptions: the frames they hold have the private texts
    (a request body, the context) as locals, which crash reporters that capture locals would ship."""
    error.__traceback__ = error.__cause__ = error.__context__ = None
    error.__suppress_context__ = False
    return error

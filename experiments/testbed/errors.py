"""What a deployment raises: one error for what could not be brought up or driven, and the
exception its signal handlers raise in the driver so that teardown runs."""


class DeploymentError(RuntimeError):
    """A deployment could not be brought up or driven (the message says why)."""


class Terminated(BaseException):
    """Raised in the driver on SIGTERM/SIGHUP so that teardown runs."""

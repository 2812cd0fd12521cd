"""A settable clock for pure code that takes ``clock=`` (routing, membership, busy meter)."""


class Clock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

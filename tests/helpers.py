"""Small test doubles shared by several test modules."""


class Recorder:
    """A core Progress that records (done, total) and can ask to cancel after some updates."""

    def __init__(self, cancel_after=None):
        self.calls = []
        self.cancel_after = cancel_after

    def update(self, done, total, message=""):
        self.calls.append((done, total))

    def cancelled(self):
        return self.cancel_after is not None and len(self.calls) > self.cancel_after

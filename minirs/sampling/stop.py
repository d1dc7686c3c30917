"""Stop sequences over streamed text: a stop string may span several tokens, and is cut from the output.

Text arrives piece by piece (one piece per token). `push` returns the part that can be shown now: everything
except a tail that could still turn out to be the start of a stop string (at most longest-stop - 1 characters).

    stop = StopText(["\\n\\nUser:"])
    shown, hit = stop.push(piece)   # hit: a stop string was completed; `shown` ends just before it
    shown += stop.flush()           # at the end of generation (not after a hit): the held-back tail
"""


class StopText:
    def __init__(self, stops):
        self.stops = [s for s in (stops or ()) if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.pending = ""  # text received but not yet shown

    def push(self, piece: str) -> tuple[str, bool]:
        if not self.stops:
            return piece, False
        self.pending += piece
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            shown, self.pending = self.pending[:cut], ""
            return shown, True
        keep = min(self.hold, len(self.pending))
        shown = self.pending[:len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep:]
        return shown, False

    def flush(self) -> str:
        shown, self.pending = self.pending, ""
        return shown

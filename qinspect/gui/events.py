"""Widgets listen to the Project without being kept alive by it."""
from __future__ import annotations

import weakref
from functools import partial


def listen(widget, project, method) -> None:
    """Call the bound `method(event, names)` on project events while `widget` exists.

    The project outlives panels: it holds only a weak reference to the method, and the listener is
    removed when the widget is destroyed, so a closed panel is neither kept alive nor called.
    """
    ref = weakref.WeakMethod(method)

    def listener(event, names):
        bound = ref()
        if bound is not None:
            bound(event, names)

    project.subscribe(listener)
    widget.destroyed.connect(partial(project.unsubscribe, listener))

"""The HTTP layer: one router per endpoint group, thin: parse, ask the backend, render (serving/)."""

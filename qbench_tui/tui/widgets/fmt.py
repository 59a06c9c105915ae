"""Number formatting shared by the panels (pure, no textual)."""
from __future__ import annotations


def dur(s: float | None) -> str:
    """Seconds -> '412 µs' / '41.2 ms' / '1.23 s'; '—' when unknown."""
    if s is None:
        return "—"
    if s < 0.001:
        return f"{s * 1e6:.0f} µs"
    if s < 0.1:
        return f"{s * 1e3:.1f} ms"
    if s < 1.0:
        return f"{s * 1e3:.0f} ms"
    if s < 100:
        return f"{s:.2f} s"
    return f"{s:.0f} s"


def dur_short(s: float | None) -> str:
    """Axis labels: as short as possible."""
    if s is None:
        return ""
    if s < 0.001:
        return f"{s * 1e6:.0f}µs"
    if s < 1.0:
        return f"{s * 1e3:.0f}ms"
    return f"{s:.1f}s"


def ladder_words(auto: str) -> str:
    """Snapshot.auto without a leading "auto:" label: the face puts its own AUTO badge in front."""
    head, sep, rest = auto.partition(":")
    return rest.strip() if sep and head.strip().lower() in ("auto", "ladder", "auto ladder") else auto


def num(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "—"
    return f"{x:,.{digits}f}"


def pct(x: float | None, digits: int = 1) -> str:
    """0..1 -> '42.1%'."""
    if x is None:
        return "—"
    return f"{100.0 * x:.{digits}f}%"


def bar(frac: float | None, width: int) -> str:
    """A text gauge with eighth-block resolution."""
    if width <= 0:
        return ""
    if frac is None:
        return "·" * width
    frac = min(1.0, max(0.0, frac))
    eighths = int(round(frac * width * 8))
    full, rem = divmod(eighths, 8)
    partial = " ▏▎▍▌▋▊▉"[rem] if rem else ""
    out = "█" * full + partial
    return out + "░" * (width - len(out))

"""Figures → people: terminal tables (:mod:`.text`), the HTML report (:mod:`.html`), ``inspect``'s
listing and lint (:mod:`.inspection`).  Reads the stages below; renders, never measures."""

"""Figures and tables of sweeps: :mod:`.records` (grouping over seeds), :mod:`.figures`,
:mod:`.tables`, :mod:`.report` (markdown report with all of them)."""

"""The engine on a loaded model: hook names, statistics extraction, planning, applying plans
and steering (interventions), generation, scoring. Imports ``models``, ``core`` and ``io``."""

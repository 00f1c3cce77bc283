"""The screen: tables, dashboard and report. The only place rich and matplotlib are imported."""

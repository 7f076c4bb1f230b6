"""PySide6 + pyqtgraph adapters over the Qt-free core."""

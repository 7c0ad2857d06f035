"""The Gradio app: layout and events (`ui`), engine results -> component values (`render`)."""
from demo.ui import build_ui, launch

__all__ = ["build_ui", "launch"]

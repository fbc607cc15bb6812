"""The Markdown and HTML reports."""

"""The load engine. Imports no Textual: timing must never share a process with rendering."""

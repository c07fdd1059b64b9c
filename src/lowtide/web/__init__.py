"""The web page's files (``static/``): plain HTML, CSS and JavaScript modules, no build step.

Served by ``lowtide.api.web`` under ``/ui``; this package only carries them as package data.
"""

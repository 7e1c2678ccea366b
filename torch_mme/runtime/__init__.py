"""The container's main process: what ``serve`` starts and runs beside MMS.

``serve`` starts MMS through the sagemaker-inference toolkit and then the public
port's front (``front`` on ``httpserver``), which checks and routes each request,
keeps every model's lifecycle, admits loads against memory (``admission``),
evicts, and talks to MMS over its Unix socket (``upstream``). ``template`` is the
fork server that makes a model's process in about 0.1 s; ``mms_java`` builds the
Java decoder that replaces MMS's own (``java/``); ``watchdog`` reloads a model
whose processes died.
"""

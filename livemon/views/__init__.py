"""
What people look at, without click: reports and tails of the database
(``report``, ``tail``), the live figures of the rings (``live``), the
full-screen ``top``, and the renderers they share (``render``).
"""

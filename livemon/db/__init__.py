"""
The SQL side: the schema and its migrations (``schema``), one writer
connection and its transactions (``writer``), records to rows (``rows``),
the hourly rollups (``rollup``) and what readers share (``reading``).
"""

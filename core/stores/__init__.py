"""Client code one driver family's broker and backend share (``sql``, ``redis``, ``aws``,
``mongodb``): connections, schemas, error translation.

The core proper never imports this package; brokers and backends import only their own
family's module here, never each other.
"""

"""Alembic environment: vlbench runs its migrations itself (Store), on the connection it hands over."""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None)
with context.begin_transaction():
    context.run_migrations()

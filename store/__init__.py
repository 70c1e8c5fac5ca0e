"""Storage specifics behind one port: SQL of SQLite and PostgreSQL, database drivers,
connections, schema setup, private files and busy stores. Nothing else in the project
branches on the database; ``domain.ports`` says what the rest may ask of it."""

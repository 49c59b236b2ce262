"""Sign in with Google, turned into server-side sessions stored in Postgres."""

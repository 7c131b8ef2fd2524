-- APNs push state per enrollment. Paired with postgres/0004_push.sql.
ALTER TABLE enrollments ADD COLUMN last_push_at TEXT;
ALTER TABLE enrollments ADD COLUMN last_push_status TEXT;

-- APNs push state per enrollment. Paired with sqlite/0004_push.sql.
ALTER TABLE enrollments ADD COLUMN last_push_at TIMESTAMPTZ;
ALTER TABLE enrollments ADD COLUMN last_push_status TEXT;

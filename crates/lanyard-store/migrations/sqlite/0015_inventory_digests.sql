-- The command exchange's inventory shortcut: per request type, a digest of the last result
-- merged into the inventory, so a result with the same answers is not merged (read, parsed,
-- rewritten) again. One "RequestType digest" line per request type. Paired with
-- postgres/0015_inventory_digests.sql.
ALTER TABLE enrollments ADD COLUMN inventory_digests TEXT;

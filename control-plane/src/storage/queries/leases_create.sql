-- A free lease row for each partition of 0..$1 that has none.
WITH RECURSIVE series (partition) AS (
    SELECT 0 WHERE 0 < $1
    UNION ALL
    SELECT partition + 1 FROM series WHERE partition + 1 < $1
)
INSERT INTO partition_leases (partition, owner, epoch, expires_at)
SELECT partition, '', 0, 0 FROM series WHERE true
ON CONFLICT (partition) DO NOTHING

-- Replica $1 takes up to $5 free or expired (at $3) partitions below $4 until $2, each with a
-- new epoch. Locked first, in partition order: a takeover waits for the old owner's writes in
-- flight, and rechecks the lease once they are done.
UPDATE partition_leases SET owner = $1, epoch = epoch + 1, expires_at = $2
WHERE partition IN (
    SELECT partition FROM partition_leases
    WHERE expires_at <= $3 AND partition < $4
    ORDER BY partition
    LIMIT $5
    FOR UPDATE
)
AND expires_at <= $3
RETURNING partition, epoch

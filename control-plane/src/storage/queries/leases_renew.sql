-- Keeps replica $2's unexpired leases (at $3, of partitions below $4) until $1. An update of
-- expires_at alone: it does not wait for fenced writes, which lock leases FOR KEY SHARE.
UPDATE partition_leases SET expires_at = $1
WHERE owner = $2 AND expires_at > $3 AND partition < $4
RETURNING partition, epoch

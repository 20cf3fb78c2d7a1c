-- Gives up replica $1's unexpired leases (at $2, of partitions below $3) beyond its first $4.
UPDATE partition_leases SET owner = '', expires_at = 0
WHERE partition IN (
    SELECT partition FROM (
        SELECT partition, row_number() OVER (ORDER BY partition) AS rank
        FROM partition_leases
        WHERE owner = $1 AND expires_at > $2 AND partition < $3
    ) AS held
    WHERE rank > $4
)

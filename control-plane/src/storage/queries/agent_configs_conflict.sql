-- The tail of ingest's agent_configs upsert, on both backends: the reported side as it is,
-- the assigned side only over an older assignment (one made through the API meanwhile wins).
ON CONFLICT (instance_uid) DO UPDATE SET
        remote_hash = excluded.remote_hash,
        remote_state = excluded.remote_state,
        applied_hash = excluded.applied_hash,
        applied_at = excluded.applied_at,
        failed_hash = excluded.failed_hash,
        failed_assignment_id = excluded.failed_assignment_id,
        failed_error = excluded.failed_error,
        failed_at = excluded.failed_at,
        out_of_band_at = excluded.out_of_band_at,
        expects_effective = excluded.expects_effective,
        effective_since_status = excluded.effective_since_status,
        assignment_id = CASE WHEN excluded.assignment_id > COALESCE(agent_configs.assignment_id, 0)
            THEN excluded.assignment_id ELSE agent_configs.assignment_id END,
        configuration_id = CASE WHEN excluded.assignment_id > COALESCE(agent_configs.assignment_id, 0)
            THEN excluded.configuration_id ELSE agent_configs.configuration_id END,
        config_version = CASE WHEN excluded.assignment_id > COALESCE(agent_configs.assignment_id, 0)
            THEN excluded.config_version ELSE agent_configs.config_version END,
        assigned_hash = CASE WHEN excluded.assignment_id > COALESCE(agent_configs.assignment_id, 0)
            THEN excluded.assigned_hash ELSE agent_configs.assigned_hash END,
        assigned_at = CASE WHEN excluded.assignment_id > COALESCE(agent_configs.assignment_id, 0)
            THEN excluded.assigned_at ELSE agent_configs.assigned_at END

-- Orthanc auto-routing: forward every stable MR series to the PINN node, except
-- series the node produced itself (its results come back to Orthanc as well).
function OnStableSeries(seriesId, tags, metadata)
  local origin = metadata['RemoteAET'] or ''
  if tags['Modality'] == 'MR' and origin ~= 'PINN_NODE' then
    SendToModality(seriesId, 'pinn_node')
  end
end

-- Orthanc auto-routing: forward every stable MR series to the PINN node (one association
-- for the whole series), except the node's own results (their series descriptions end in
-- "(PINN node)"), so nothing loops.
function OnStableSeries(seriesId, tags, metadata)
  local description = tags['SeriesDescription'] or ''
  if tags['Modality'] == 'MR' and not string.find(description, '(PINN node)', 1, true) then
    RestApiPost('/modalities/pinn_node/store', seriesId)
  end
end

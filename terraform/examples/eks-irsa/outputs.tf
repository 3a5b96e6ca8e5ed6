output "role_arn" {
  description = "Put it in eks/irsa/serviceaccount.yaml (annotation eks.amazonaws.com/role-arn)."
  value       = module.role.role_arn
}

output "bucket_name" {
  description = "Put it in the router container's LOGFERRY_BUCKET (eks/deployment.yaml)."
  value       = module.destinations.bucket_name
}

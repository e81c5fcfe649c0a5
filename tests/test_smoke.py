def test_admin_lists_organizations(client, admin):
    response = client.get("/v1/organizations", headers=admin.headers)
    assert response.status_code == 200
    assert [o["name"] for o in response.json["items"]] == ["Test Consortium"]

module example.com/foreignsvc

go 1.26
